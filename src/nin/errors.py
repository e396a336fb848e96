class NinError(Exception):
    """A problem the user can fix (bad file, bad option), said in one sentence: which file or setting, what
    is wrong, what to do. The CLI prints it in one line and exits 2.

    >>> try:
    ...     nin.load("no/such/run")
    ... except nin.NinError as e:
    ...     print(e)
    no/such/run: no such checkpoint; pass a run directory made by `nin train` or its checkpoint.pt
    """
