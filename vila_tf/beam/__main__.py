"""`python -m vila_tf.beam ...` = `vila-tf beam ...`."""
import sys

from vila_tf.beam.cli import main

sys.exit(main())
