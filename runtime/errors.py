"""The one exception type that means "the user gave us something we cannot use".

Anything raised as ``UserInputError`` reaches the user as a single line and
exit status 2 (see ``unet2d.main``); every other exception is a bug and keeps
its traceback.
"""


class UserInputError(Exception):
    """Bad flags, missing or malformed data, unusable output folders."""
