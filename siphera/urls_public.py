"""URLs of the public schema. Org hosts use urls_tenants; a host no org answers gets the
JSON `unknown_org` 404 from the tenant middleware, so this conf is only reached by code that
routes to `public` explicitly. /health and /ready are answered by middleware on any host."""

urlpatterns: list = []

handler404 = "siphera.api_errors.handler404"
handler500 = "siphera.api_errors.handler500"
