"""`python -m geomim.data.synthetic OUT_DIR [--scenes S ...]`: see `geomim.data.synthetic.cli`."""

from geomim.data.synthetic.cli import main

main()
