class NinError(Exception):
    """A problem the user can fix (bad file, bad option). The CLI prints it in one line and exits 2."""
