"""Authentication and authorization: bearer tokens, principals and their roles, audit."""
