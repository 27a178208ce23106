"""`python -m mechasandbox.images`: where the image recipe is, and how to build from it."""

from mechasandbox.backends.oci.engine import DEFAULT_IMAGE
from mechasandbox.images import instructions

print(instructions(DEFAULT_IMAGE))
