from dytrim.cli import main

raise SystemExit(main())
