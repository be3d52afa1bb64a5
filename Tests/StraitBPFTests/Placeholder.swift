// local placeholder, never committed
