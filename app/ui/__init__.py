"""The dashboard: one page served by the API at ``/ui`` (HTML, CSS and JavaScript from this package; no build step,
no CDN), which reads the ``/v1`` API from the browser."""
