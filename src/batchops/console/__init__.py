"""The web console for operators and device users: routes per area, templates/,
static/ (vendored assets), locale/ (gettext catalogs). Assembled by console/app.py."""
