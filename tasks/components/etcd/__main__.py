from tasks.components.etcd import main

raise SystemExit(main())
