"""``sora-worker dashboard``: a live page of the queue and its videos, for operators.

Its own process, reading the database through ``service.database.dashboard``; its
buttons call the CLI's verbs (``service.operations``). ``app`` has the routes,
``access`` who may use it, ``live`` the feed behind the live page, ``pages`` the
templates (Jinja2, autoescaped).
"""
