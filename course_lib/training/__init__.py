"""Training: the two loops the course teaches, on one shared core.

- ``core``: settings shared by both commands, the run folder, checkpoints and exact
  resume, learning-rate schedules, evaluation cadence, progress, the loss plot, and the
  command line built from the settings.
- ``precision``: one mixed-precision policy (bf16, fp16 with a gradient scaler, fp32).
- ``gpt``: the GPT loop (notebook 08, ``python -m course_lib train gpt``).
- ``translation``: the encoder-decoder loop (notebook 07, ``python -m course_lib train translate``).
"""
