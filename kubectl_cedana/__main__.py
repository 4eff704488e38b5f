"""`python -m kubectl_cedana ...` is `kubectl cedana ...`."""
from kubectl_cedana.cli import main

main()
