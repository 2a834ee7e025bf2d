// Renders the operations of /openapi.json as a plain list (an offline stand-in for Swagger UI).
"use strict";
(async function () {
  const box = document.getElementById("ops");
  let spec;
  try {
    const resp = await fetch("/openapi.json");
    spec = await resp.json();
  } catch (err) {
    box.textContent = "cannot load /openapi.json: " + err;
    return;
  }
  box.textContent = "";
  const refName = (schema) => (schema && schema.$ref ? schema.$ref.split("/").pop() : JSON.stringify(schema || {}));
  for (const [path, methods] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(methods)) {
      const div = document.createElement("div");
      div.className = "op";
      const head = document.createElement("div");
      const m = document.createElement("span");
      m.className = "method";
      m.textContent = method;
      const p = document.createElement("code");
      p.textContent = path;
      head.append(m, p);
      div.append(head);
      if (op.summary || op.description) {
        const d = document.createElement("p");
        d.textContent = op.summary || op.description;
        div.append(d);
      }
      const params = (op.parameters || []).map((x) => `${x.name} (${x.in}${x.required ? ", required" : ""})`);
      if (params.length) {
        const d = document.createElement("p");
        d.textContent = "parameters: " + params.join(", ");
        div.append(d);
      }
      if (op.requestBody) {
        const d = document.createElement("p");
        const kinds = Object.entries(op.requestBody.content || {}).map(([t, c]) => `${t}: ${refName(c.schema)}`);
        d.textContent = "body: " + kinds.join("; ");
        div.append(d);
      }
      const codes = Object.keys(op.responses || {});
      if (codes.length) {
        const d = document.createElement("p");
        d.textContent = "responses: " + codes.join(", ");
        div.append(d);
      }
      box.append(div);
    }
  }
})();
