from mmlora.cli import main

raise SystemExit(main())
