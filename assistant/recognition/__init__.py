"""Recognition: the sentence library, the recognizer, and which entities a match means."""
