from xft.tools.merge import main

raise SystemExit(main())
