"""Include each script of a page once.

Jupyter Book registers sphinx-thebe and sphinx-book-theme registers it again, so every page carried
the inline ``const THEBE_JS_URL = ...`` script twice and the browser stopped at "Identifier
'THEBE_JS_URL' has already been declared". This drops exact repeats (same file, same attributes,
same inline body; an inline script's file name may be ``None`` or ``""``) from each page's script
list, keeping the first.
"""


def _key(script):
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", str(script)) or ""  # an inline script is registered as None and as ""
    return str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def unique_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
