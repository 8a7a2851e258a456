// Validates custom resources (KEDA ScaledObject, prometheus-operator ServiceMonitor) against the
// JSON schemas of their CRDs, as shipped by the npm packages @kubernetes-models/keda and
// @kubernetes-models/prometheus-operator (installed by scripts/helm.sh under $1/node_modules).
// Reads a JSON array of objects on stdin; prints one line per invalid object; exit 1 if any.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = join(process.argv[2], "node_modules", "@kubernetes-models");
const MODELS = {
  ScaledObject: ["keda", "keda.sh/v1alpha1/ScaledObject.js"],
  ServiceMonitor: ["prometheus-operator", "monitoring.coreos.com/v1/ServiceMonitor.js"],
};
let bad = 0;
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  const [pkg, file] = MODELS[obj.kind] ?? [];
  if (!pkg) {
    console.log(`${obj.kind}: no schema`);
    bad++;
    continue;
  }
  const mod = await import(pathToFileURL(join(root, pkg, file)).href);
  try {
    new mod[obj.kind](obj).validate();
  } catch (e) {
    console.log(`${obj.kind}/${obj.metadata.name}: ${e.message}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
