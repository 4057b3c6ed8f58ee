"""Front ends over the perceiver_music engine: the CLI, the Gradio web UI, the notebook widget."""
