"""The one exception type for problems a user can fix (bad config, missing data)."""


class UserError(Exception):
    """A problem in the user's input: ``run.py`` prints its one-line message and exits with 2.

    Messages name the problem and the fix, e.g.
    ``ImageNet folder not found: data/imagenet/train (set paths.data_dir or DD_DATA_DIR)``.
    """
