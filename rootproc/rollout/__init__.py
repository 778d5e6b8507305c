"""What the root serves, and how it follows its stage.

- `installed`: `ActiveConfig` (the bundle a stage put live: models, their
  signatures, placement) and `PreparedConfig` (it made ready to serve:
  preprocessors and trim plans, built off the serving loop)
- `follower`: `ConfigFollower`, the thread that follows the root's stage in
  the config store, prepares each new config and hands it to the loop, and
  writes the root's heartbeat
"""
