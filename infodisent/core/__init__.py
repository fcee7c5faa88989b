"""The method itself (floor 3, above the records): the head (rotation U, two-sided max, non-negative W), the
model that puts it on a frozen backbone, the backbone's map adapter and weight loading, view geometry.

Imports only :mod:`infodisent.records`, :mod:`infodisent.errors` and :mod:`infodisent.io`: no training, no
datasets, no run directory (the head's file is read and written by :mod:`infodisent.run`)."""
