"""The device people speak to: wake word, end of speech, the request sent, the answer played."""
