"""TEST DOUBLE of nanochat's scripts/chat_cli.py.

Needs the -i checkpoint (default sft; -g/-s pick tag/step) and the tokenizer. With -p PROMPT it
prints one canned reply after `Assistant: ` and exits; otherwise it reads `User:` lines from stdin
until quit/exit/EOF, like upstream.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the double's root
import nanochat_double_fake as F  # noqa: E402
import nanochat_double_io as IO  # noqa: E402
import nanochat_double_support as S  # noqa: E402

ctx = S.start("scripts/chat_cli.py", description="Chat with the model")
a = ctx.args
ctx.qualifier = a.source
ctx.compute_init(a.device_type)
ctx.fail_point()
IO.find_model(ctx, a.source, a.model_tag, a.step)
print("\nNanoChat Interactive Mode", flush=True)
ctx.maybe_hang()
print("-" * 50)
print("Type 'quit' or 'exit' to end the conversation")
print("Type 'clear' to start a new conversation")
print("-" * 50, flush=True)
while True:
    if a.prompt:
        user_input = a.prompt
    else:
        try:
            user_input = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print("\nGoodbye!")
            break
    if user_input.lower() in ("quit", "exit"):
        print("Goodbye!")
        break
    if user_input.lower() == "clear":
        print("Conversation cleared.")
        continue
    if not user_input:
        continue
    print("\nAssistant: ", end="", flush=True)
    print(F.reply(user_input), flush=True)
    if a.prompt:
        break
