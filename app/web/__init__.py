"""The web app: a Gradio page over `perceiver_music.engine` (started by `launch.py`).

- `layout`: the page and its wiring, `build_app(config, models) -> gr.Blocks`.
- `handlers`: what each event does (calls the engine, maps results and errors to updates).
- `session`: per-tab state: the primer, undo history, the Stop switch, the output folder.
"""

from .handlers import WebConfig
from .layout import build_app, launch_options

__all__ = ["WebConfig", "build_app", "launch_options"]
