"""The studio: a local web page for one ASGAN checkpoint (generate, interpolate, mix styles, project a recording).

engine.py is the model side (no web code), app.py the Gradio page and the `python -m density.studio` command.
"""
