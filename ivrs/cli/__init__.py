"""The operator's door: the click commands over the core services (one module per
command group, ``common`` for what they share). ``ivrs.main`` puts them in the
``ivrs`` command."""
