import sys

from tokensched.cli import main

sys.exit(main())
