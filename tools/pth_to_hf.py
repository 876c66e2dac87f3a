from xft.tools.pth_to_hf import main

raise SystemExit(main())
