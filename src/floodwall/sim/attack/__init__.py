"""The attack simulator (`floodwall attack`): established users chatting through the official `openai`
client while attackers flood, sign up, stuff credentials, probe and jailbreak, all against a loopback target;
then a report of who was served."""
