"""`nin serve`: a local web page and JSON API over a trained run (app.py, page.html)."""
