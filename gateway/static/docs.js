// Starts Swagger UI on /openapi.json (a file, not an inline script: the page's CSP forbids those).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // No "try it out" calls to a validator on the internet.
  validatorUrl: null,
});
