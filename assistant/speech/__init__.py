"""Speech: audio in, speech to text, text to speech, and where sentences end."""
