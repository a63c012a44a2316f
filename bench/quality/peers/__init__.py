"""The peers (FuxiCTR, RecBole): run in .venv-peers as scripts; summarize.py runs in .venv."""
