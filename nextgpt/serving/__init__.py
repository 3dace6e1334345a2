"""Serving front ends over `nextgpt.inference.pipeline` (the Gradio chat demo).

from nextgpt.serving.gradio_app import DemoSettings, build_demo, launch_demo
"""
