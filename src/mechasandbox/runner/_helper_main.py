"""Entry point of the spawn helper process (`python -m mechasandbox.runner._helper_main`)."""

from mechasandbox.runner.helper import main

main()
