// Checks certkeeper-reload-nginx.rules against a mock polkit: node systemd/tests/polkit-rule-check.js systemd/certkeeper-reload-nginx.rules
const fs = require("fs");
let rule;
const polkit = { Result: { YES: "yes", NOT_HANDLED: null }, addRule: (f) => { rule = f; } };
new Function("polkit", fs.readFileSync(process.argv[2], "utf8"))(polkit);
const act = (id, unit, verb) => ({ id, lookup: (k) => ({ unit, verb })[k] });
const cases = [
  [act("org.freedesktop.systemd1.manage-units", "nginx.service", "reload"), "certkeeper", "yes"],
  [act("org.freedesktop.systemd1.manage-units", "nginx.service", "restart"), "certkeeper", null],
  [act("org.freedesktop.systemd1.manage-units", "nginx.service", "stop"), "certkeeper", null],
  [act("org.freedesktop.systemd1.manage-units", "sshd.service", "reload"), "certkeeper", null],
  [act("org.freedesktop.systemd1.manage-units", "nginx.service", "reload"), "nobody", null],
  [act("org.freedesktop.systemd1.manage-unit-files", "nginx.service", "reload"), "certkeeper", null],
];
let bad = 0;
for (const [a, user, want] of cases) {
  const got = rule(a, { user });
  if (got !== want) { bad++; console.log("FAIL", a.id, a.lookup("unit"), a.lookup("verb"), user, got); }
}
console.log(bad ? "failures: " + bad : "all " + cases.length + " cases ok");
process.exit(bad ? 1 : 0);
