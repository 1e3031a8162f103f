from zimage_mcp.cli import main

raise SystemExit(main())
