"""The web dashboard at ``/ui``: static assets (``static/``) and the JSON they read (:mod:`burrow.ui.api`)."""
