"""exchange: a BitMEX-protocol websocket server, simulator and capture replay."""
