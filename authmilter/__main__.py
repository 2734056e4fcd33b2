from authmilter.cli import main

raise SystemExit(main())
