// A minimal local reader of openapi.json (FastAPI's stock /docs loads Swagger UI from a CDN).
// URLs are relative to this page, so it works behind a path prefix too.
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function showEndpoints() {
  const spec = await (await fetch("openapi.json")).json();
  const list = document.getElementById("endpoints");
  list.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const section = element("section", null, "endpoint");
      section.appendChild(element("h2", `${method.toUpperCase()} ${path}`));
      if (operation.summary) section.appendChild(element("p", operation.summary));
      if (operation.description) section.appendChild(element("p", operation.description, "note"));
      const parameters = operation.parameters || [];
      if (parameters.length) {
        const table = element("ul");
        for (const p of parameters) {
          table.appendChild(element("li", `${p.name} (${p.in}, ${p.schema.type || "any"}): ${p.description || ""}`));
        }
        section.appendChild(table);
      }
      if (operation.requestBody) {
        section.appendChild(element("p", "body: " + Object.keys(operation.requestBody.content).join(", "), "note"));
      }
      const statuses = Object.entries(operation.responses || {}).map(([s, r]) => `${s} ${r.description}`);
      section.appendChild(element("p", "responses: " + statuses.join("; "), "note"));
      list.appendChild(section);
    }
  }
}

// The example names this server's own address, port and path.
document.getElementById("example").textContent =
  `curl -F file=@picture.jpg '${new URL("v1/captions", window.location.href)}?beam_size=3&num_captions=2'`;

showEndpoints().catch((error) => { document.getElementById("endpoints").textContent = `could not read openapi.json: ${error}`; });
