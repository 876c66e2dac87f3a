from xft.tools.chat import main

raise SystemExit(main())
