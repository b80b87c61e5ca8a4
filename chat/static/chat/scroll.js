// Scrolling the conversation: the view follows the answer being written until the reader
// scrolls up, and a "jump" button brings them back to the latest message.

const NEAR_BOTTOM_PX = 48;

export class Scroller {
  constructor({ scroller, jump, onJump }) {
    this.scroller = scroller;
    this.jump = jump;
    this.stick = true; // auto-scroll follows the answer until the user scrolls up
    scroller.addEventListener("scroll", () => {
      this.stick = this.distanceFromBottom() < NEAR_BOTTOM_PX;
      jump.hidden = this.stick;
    }, { passive: true });
    scroller.addEventListener("wheel", (event) => {
      if (event.deltaY < 0) this.stick = false;
    }, { passive: true });
    scroller.addEventListener("touchmove", () => {
      this.stick = this.distanceFromBottom() < NEAR_BOTTOM_PX;
    }, { passive: true });
    jump.addEventListener("click", () => {
      this.stick = true;
      this.toBottom();
      onJump();
    });
  }

  distanceFromBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight;
  }

  toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.jump.hidden = true;
  }

  /** After the answer grew: keep up with it, or offer the jump button. */
  follow() {
    if (this.stick) this.toBottom();
    else this.jump.hidden = this.distanceFromBottom() < NEAR_BOTTOM_PX;
  }
}
