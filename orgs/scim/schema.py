"""The SCIM schemas this server implements (RFC 7643), as data: the /Schemas,
/ResourceTypes and /ServiceProviderConfig documents are rendered from it, and PATCH,
filters, `attributes` and input validation resolve attribute names through it
(case-insensitively, as RFC 7643 section 2.1 asks).

Only what is listed here is stored and published; scim2-tester and the IdPs learn it from
/Schemas. `password` (Okta may send one) is accepted and dropped: sign-in is SSO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SPC = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"

MAX_PAGE = 1000  # `count` is capped here (RFC 7644 3.4.2.4 lets the server cap it)
DEFAULT_PAGE = 100
MAX_STRING = 1024
MAX_VALUES = 50  # entries of one multi-valued attribute of a user (e-mails, phones...)


@dataclass(frozen=True)
class Attr:
    name: str
    type: str = "string"  # string boolean decimal integer dateTime reference complex
    multi: bool = False
    required: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"  # readOnly readWrite immutable writeOnly
    returned: str = "default"  # always never default request
    uniqueness: str = "none"
    description: str = ""
    sub: tuple[Attr, ...] = ()
    reference_types: tuple[str, ...] = ()
    canonical: tuple[str, ...] = ()

    def child(self, name: str) -> Attr | None:
        key = name.lower()
        return next((a for a in self.sub if a.name.lower() == key), None)

    def render(self) -> dict:
        out = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi,
            "description": self.description or self.name,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        }
        if self.sub:
            out["subAttributes"] = [a.render() for a in self.sub]
        if self.reference_types:
            out["referenceTypes"] = list(self.reference_types)
        if self.canonical:
            out["canonicalValues"] = list(self.canonical)
        return out


def _multi(name: str, *extra: Attr, value_type: str = "string", types=()) -> Attr:
    return Attr(
        name,
        "complex",
        multi=True,
        sub=(
            Attr("value", value_type),
            Attr("display"),
            Attr("type", canonical=types),
            Attr("primary", "boolean"),
            *extra,
        ),
    )


@dataclass(frozen=True)
class Schema:
    id: str
    name: str
    description: str
    attrs: tuple[Attr, ...] = field(default_factory=tuple)

    def attr(self, name: str) -> Attr | None:
        key = name.lower()
        return next((a for a in self.attrs if a.name.lower() == key), None)

    def render(self, base: str) -> dict:
        return {
            "schemas": [SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": [a.render() for a in self.attrs],
            "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{self.id}"},
        }


USER_SCHEMA = Schema(
    USER,
    "User",
    "User Account",
    (
        Attr("userName", required=True, uniqueness="server"),
        Attr(
            "name",
            "complex",
            sub=tuple(
                Attr(n)
                for n in (
                    "formatted",
                    "familyName",
                    "givenName",
                    "middleName",
                    "honorificPrefix",
                    "honorificSuffix",
                )
            ),
        ),
        Attr("displayName"),
        Attr("nickName"),
        Attr("profileUrl", "reference", reference_types=("external",)),
        Attr("title"),
        Attr("userType"),
        Attr("preferredLanguage"),
        Attr("locale"),
        Attr("timezone"),
        # Required: every account is active or not; it cannot be unassigned (a remove is
        # refused). POSTs without it still create an active user.
        Attr("active", "boolean", required=True),
        _multi("emails", types=("work", "home", "other")),
        _multi("phoneNumbers", types=("work", "home", "mobile", "fax", "pager", "other")),
        Attr(
            "addresses",
            "complex",
            multi=True,
            sub=tuple(
                Attr(n)
                for n in (
                    "formatted",
                    "streetAddress",
                    "locality",
                    "region",
                    "postalCode",
                    "country",
                    "type",
                )
            )
            + (Attr("primary", "boolean"),),
        ),
        Attr(
            "groups",
            "complex",
            multi=True,
            mutability="readOnly",
            sub=(
                Attr("value", mutability="readOnly"),
                Attr("$ref", "reference", mutability="readOnly", reference_types=("Group",)),
                Attr("display", mutability="readOnly"),
                Attr("type", mutability="readOnly", canonical=("direct",)),
            ),
        ),
    ),
)

ENTERPRISE_SCHEMA = Schema(
    ENTERPRISE,
    "EnterpriseUser",
    "Enterprise User",
    (
        Attr("employeeNumber"),
        Attr("costCenter"),
        Attr("organization"),
        Attr("division"),
        Attr("department"),
        Attr(
            "manager",
            "complex",
            sub=(Attr("value"), Attr("displayName", mutability="readOnly")),
        ),
    ),
)

GROUP_SCHEMA = Schema(
    GROUP,
    "Group",
    "Group",
    (
        Attr("displayName", required=True, uniqueness="server"),
        Attr(
            "members",
            "complex",
            multi=True,
            sub=(
                Attr("value", mutability="immutable"),
                Attr("$ref", "reference", mutability="immutable", reference_types=("User",)),
                Attr("type", mutability="immutable", canonical=("User",)),
            ),
        ),
    ),
)

# Attributes every resource has (RFC 7643 section 3.1), outside any schema's list.
COMMON = (
    Attr("id", mutability="readOnly", returned="always", case_exact=True, uniqueness="server"),
    Attr("externalId", case_exact=True),
    Attr(
        "meta",
        "complex",
        mutability="readOnly",
        sub=(
            Attr("resourceType", mutability="readOnly"),
            Attr("created", "dateTime", mutability="readOnly"),
            Attr("lastModified", "dateTime", mutability="readOnly"),
            Attr("location", "reference", mutability="readOnly"),
            Attr("version", mutability="readOnly"),
        ),
    ),
)


@dataclass(frozen=True)
class ResourceKind:
    name: str
    endpoint: str
    core: Schema
    extensions: tuple[Schema, ...] = ()

    def schema_for(self, urn: str) -> Schema | None:
        key = urn.lower()
        return next((s for s in (self.core, *self.extensions) if s.id.lower() == key), None)

    def top(self, name: str) -> Attr | None:
        """A top-level attribute of the core schema or a common one."""
        key = name.lower()
        return self.core.attr(name) or next((a for a in COMMON if a.name.lower() == key), None)

    def render(self, base: str) -> dict:
        return {
            "schemas": [RESOURCE_TYPE],
            "id": self.name,
            "name": self.name,
            "endpoint": "/" + self.endpoint,
            "description": self.core.description,
            "schema": self.core.id,
            "schemaExtensions": [{"schema": s.id, "required": False} for s in self.extensions],
            "meta": {
                "resourceType": "ResourceType",
                "location": f"{base}/ResourceTypes/{self.name}",
            },
        }


USERS = ResourceKind("User", "Users", USER_SCHEMA, (ENTERPRISE_SCHEMA,))
GROUPS = ResourceKind("Group", "Groups", GROUP_SCHEMA)
KINDS = (USERS, GROUPS)
SCHEMAS = (USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE_SCHEMA)


def service_provider_config(base: str, max_body: int) -> dict:
    return {
        "schemas": [SPC],
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_PAGE},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "A per-org SCIM token (portal or manage.py scim_token).",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base}/ServiceProviderConfig",
        },
    }
