"""How requests reach the assistant and answers leave it: MQTT now; Wyoming and Hermes later."""
