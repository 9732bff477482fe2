"""Software inventory: per-host SBOMs from the running system's closure, and known
vulnerabilities matched against them (docs/inventory.md)."""
