"""SCIM 2.0 provisioning (RFC 7643/7644) of an org's users and groups by its IdP."""
