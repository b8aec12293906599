use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

/// A sink that reports each write on a channel, and waits before writing while it is stalled
/// (a log pipe nobody reads).
struct Sink {
    writes: mpsc::Sender<Vec<u8>>,
    stall: Stall,
}

/// Stalls and resumes a [`Sink`].
#[derive(Clone, Default)]
struct Stall(Arc<(Mutex<bool>, Condvar)>);

impl Stall {
    fn set(&self, stalled: bool) {
        *self.0 .0.lock().unwrap() = stalled;
        self.0 .1.notify_all();
    }

    fn wait_until_resumed(&self) {
        let stalled = self.0 .0.lock().unwrap();
        drop(self.0 .1.wait_while(stalled, |stalled| *stalled).unwrap());
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stall.wait_until_resumed();
        let _ = self.writes.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sink(stalled: bool) -> (Sink, mpsc::Receiver<Vec<u8>>, Stall) {
    let (writes, written) = mpsc::channel();
    let stall = Stall::default();
    stall.set(stalled);
    (Sink { writes, stall: stall.clone() }, written, stall)
}

/// Notices as lines these tests can pick out.
fn notice(notice: Notice, out: &mut Vec<u8>) {
    match notice {
        Notice::Dropping => out.extend_from_slice(b"NOTICE dropping\n"),
        Notice::Dropped(lines) => out.extend_from_slice(format!("NOTICE dropped {lines}\n").as_bytes()),
    }
}

fn log(writer: &BatchWriter, line: &str) {
    writer.make_writer().write_all(line.as_bytes()).unwrap();
}

/// Logs `line` `lines` times on a thread of its own; the receiver hears when it is done.
fn log_in_background(
    writer: &BatchWriter,
    line: &str,
    lines: usize,
) -> (std::thread::JoinHandle<()>, mpsc::Receiver<()>) {
    let (done, finished) = mpsc::channel();
    let (writer, line) = (writer.clone(), line.to_string());
    let logger = std::thread::spawn(move || {
        for _ in 0..lines {
            log(&writer, &line);
        }
        done.send(()).unwrap();
    });
    (logger, finished)
}

/// Everything the sink received until `writer`, the last handle, is dropped and the writer
/// thread has written the rest and stopped (which drops the sink and ends the channel).
fn written_until_stopped(writer: BatchWriter, written: mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    drop(writer);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all = Vec::new();
    loop {
        match written.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(batch) => all.extend(batch),
            Err(mpsc::RecvTimeoutError::Disconnected) => return all,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the writer thread did not stop within 30 s"),
        }
    }
}

#[test]
fn a_line_is_written_within_the_linger_time_without_anything_else_happening() {
    let (sink, written, _) = sink(false);
    let (writer, _guard) = batch_writer(sink, notice).unwrap();
    for round in 0..3 {
        // Each round starts with an idle writer thread, which the line must wake.
        let started = Instant::now();
        log(&writer, &format!("line {round}\n"));
        let batch = written.recv_timeout(Duration::from_secs(5)).expect("the line is written");
        assert_eq!(batch, format!("line {round}\n").into_bytes());
        assert!(started.elapsed() < Duration::from_secs(1), "written after {:?}", started.elapsed());
    }
}

/// Four threads, each logging `per_thread` lines `"{thread} {i} {i % 97 times x}"`.
fn log_from_four_threads(writer: &BatchWriter, per_thread: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    log(&writer, &format!("{t} {i} {}\n", "x".repeat(i % 97)));
                }
            })
        })
        .collect()
}

/// All of [`log_from_four_threads`]' lines are in `text`, whole, in each thread's order.
fn assert_all_whole_and_in_order(text: &str, per_thread: usize) {
    let mut next = [0usize; 4];
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (t, i): (usize, usize) = (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap());
        assert_eq!(i, next[t], "thread {t}'s lines in order");
        assert_eq!(parts.next().unwrap().len(), i % 97, "line {line:?} whole");
        next[t] += 1;
    }
    assert_eq!(next, [per_thread; 4], "every line written");
}

#[test]
fn lines_from_many_threads_are_all_written_whole_and_in_each_threads_order() {
    let (sink, written, _) = sink(false);
    let (writer, guard) = batch_writer(sink, notice).unwrap();
    for thread in log_from_four_threads(&writer, 20_000) {
        thread.join().unwrap();
    }
    drop(guard);
    let batches: Vec<Vec<u8>> = written.try_iter().collect();
    assert!(batches.len() < 80_000 / 10, "lines are batched: {} writes for 80,000 lines", batches.len());
    assert_all_whole_and_in_order(&String::from_utf8(batches.concat()).unwrap(), 20_000);
    assert_eq!(writer.dropped(), 0);
}

/// The process's log sink stalls for good (a log shipper that stopped reading): logging three
/// buffers' worth of lines still returns at once, the lines past the cap are dropped and
/// counted, and when the sink takes lines again the log says how many were lost.
/// To see it fail, make `append` wait for room instead of calling `drop_line`.
#[test]
fn a_stalled_sink_never_blocks_logging_lines_past_the_cap_are_dropped_counted_and_reported() {
    let (sink, written, stall) = sink(true);
    let (writer, _guard) = batch_writer(sink, notice).unwrap();
    let line = format!("{}\n", "y".repeat(1023));
    let lines = MAX_BUFFERED_BYTES / line.len() * 3;
    let dropped_before = lines_dropped();
    let (logger, finished) = log_in_background(&writer, &line, lines);
    finished.recv_timeout(Duration::from_secs(30)).expect("logging into a stalled sink does not wait for it");
    logger.join().unwrap();
    let dropped = writer.dropped();
    {
        let state = writer.handle.shared.lock();
        let notice_line = b"NOTICE dropping\n".len();
        assert!(state.lines.len() >= MAX_BUFFERED_BYTES, "the buffer is full: {}", state.lines.len());
        assert!(state.lines.len() < MAX_BUFFERED_BYTES + line.len() + notice_line, "and no fuller");
    }
    // Whatever the writer took before the sink stalled, at least two buffers' worth is dropped.
    assert!(dropped as usize >= lines - 2 * MAX_BUFFERED_BYTES / line.len(), "{dropped} of {lines} dropped");
    assert!(lines_dropped() >= dropped_before + dropped, "counted for log_lines_dropped_total");

    stall.set(false);
    wait_for_room(&writer);
    log(&writer, "after the stall\n");
    let text = String::from_utf8(written_until_stopped(writer, written)).unwrap();
    let kept = text.lines().filter(|l| l.len() == line.len() - 1).count();
    assert_eq!(kept + dropped as usize, lines, "every line is either written or counted");
    let notices: Vec<&str> = text.lines().filter(|l| !l.starts_with('y')).collect();
    assert_eq!(
        notices,
        ["NOTICE dropping", &format!("NOTICE dropped {dropped}"), "after the stall"],
        "the stall is announced where lines go missing, and its end with the count"
    );
}

/// The same with a real pipe that nobody reads (a child process that never reads its stdin):
/// a write to it blocks in the kernel once the pipe's 64 KiB are full.
/// To see it fail, make `append` wait for room instead of calling `drop_line`.
#[test]
fn logging_into_a_pipe_nobody_reads_returns_within_a_deadline() {
    let mut reader =
        std::process::Command::new("sleep").arg("600").stdin(std::process::Stdio::piped()).spawn().expect("sleep runs");
    let pipe = reader.stdin.take().unwrap();
    let (writer, guard) = batch_writer(pipe, notice).unwrap();
    let line = format!("{}\n", "p".repeat(511));
    let lines = MAX_BUFFERED_BYTES / line.len() * 2;
    let (logger, finished) = log_in_background(&writer, &line, lines);
    let returned = finished.recv_timeout(Duration::from_secs(30));
    // The guard gives up on the stalled pipe after EXIT_FLUSH_TIMEOUT (on a thread of its own,
    // so that a guard that waited for good fails the test instead of hanging it).
    let (exited, guard_dropped) = mpsc::channel();
    std::thread::spawn(move || {
        drop(guard);
        exited.send(()).unwrap();
    });
    let guard_returned = guard_dropped.recv_timeout(EXIT_FLUSH_TIMEOUT + Duration::from_secs(30));
    let _ = reader.kill();
    let _ = reader.wait();
    returned.expect("logging into a full pipe does not wait for it");
    logger.join().unwrap();
    guard_returned.expect("the guard stops waiting for a stalled sink");
    assert!(writer.dropped() > 0);
}

/// A sink that stalls again right after it recovered: no second announcement within
/// [`NOTICE_INTERVAL`], and the count is not lost: it is reported at exit at the latest.
#[test]
fn notices_are_throttled_and_the_last_count_is_reported_at_exit() {
    let (sink, written, stall) = sink(true);
    let (writer, guard) = batch_writer(sink, notice).unwrap();
    let line = format!("{}\n", "y".repeat(1023));
    let lines = MAX_BUFFERED_BYTES / line.len() * 3;
    let mut dropped = Vec::new();
    for _ in 0..2 {
        // The writer thread takes a line and blocks in the stalled sink first: the burst then
        // meets a buffer nothing drains until the sink resumes. (A writer thread slow to take
        // its first batch, on a busy machine, would take it in the middle of the burst, make
        // room, and announce the drops so far too early.)
        log(&writer, &line);
        wait_until("the writer thread blocked in the sink", || writer.handle.shared.lock().lines.is_empty());
        let before = writer.dropped();
        let (logger, finished) = log_in_background(&writer, &line, lines);
        finished.recv_timeout(Duration::from_secs(30)).expect("logging does not wait");
        logger.join().unwrap();
        dropped.push(writer.dropped() - before);
        stall.set(false);
        wait_for_room(&writer);
        log(&writer, "recovered\n");
        wait_until("the buffer written", || writer.handle.shared.lock().lines.is_empty());
        stall.set(true);
    }
    stall.set(false);
    drop(guard);
    let text = String::from_utf8(written_until_stopped(writer, written)).unwrap();
    let notices: Vec<&str> = text.lines().filter(|l| !l.starts_with('y')).collect();
    assert_eq!(
        notices,
        [
            "NOTICE dropping",
            &format!("NOTICE dropped {}", dropped[0]),
            "recovered",
            "recovered",
            &format!("NOTICE dropped {}", dropped[1]),
        ]
    );
}

#[test]
fn lines_logged_after_the_guard_is_dropped_are_still_written() {
    let (sink, written, _) = sink(false);
    let (writer, guard) = batch_writer(sink, notice).unwrap();
    log(&writer, "before\n");
    drop(guard);
    assert_eq!(written.try_iter().flatten().collect::<Vec<u8>>(), b"before\n", "written when the guard drops");
    log(&writer, "after\n");
    assert_eq!(written_until_stopped(writer, written), b"after\n");
}

#[test]
fn stopping_while_threads_log_loses_nothing_and_keeps_each_threads_order() {
    for _ in 0..10 {
        let (sink, written, _) = sink(false);
        let (writer, guard) = batch_writer(sink, notice).unwrap();
        let threads = log_from_four_threads(&writer, 5_000);
        std::thread::sleep(Duration::from_millis(2));
        drop(guard); // While the threads are still logging.
        for thread in threads {
            thread.join().unwrap();
        }
        let text = String::from_utf8(written_until_stopped(writer, written)).unwrap();
        assert_all_whole_and_in_order(&text, 5_000);
    }
}

/// A sink whose first write panics and whose second fails.
struct Breaks {
    writes: usize,
    written: mpsc::Sender<Vec<u8>>,
}

impl Write for Breaks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        match self.writes {
            1 => panic!("the sink broke"),
            2 => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed")),
            _ => {
                let _ = self.written.send(buf.to_vec());
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn lines_a_broken_sink_loses_are_counted_and_the_writer_goes_on() {
    let (sender, written) = mpsc::channel();
    let (writer, _guard) = batch_writer(Breaks { writes: 0, written: sender }, notice).unwrap();
    log(&writer, "lost to a panic\n");
    wait_until("the first line counted", || writer.dropped() == 1);
    log(&writer, "lost to an error\n");
    wait_until("the second line counted", || writer.dropped() == 2);
    log(&writer, "written\n");
    assert_eq!(written.recv_timeout(Duration::from_secs(10)).unwrap(), b"written\n");
}

/// Waits until the writer has taken the full buffer: the next line finds room.
fn wait_for_room(writer: &BatchWriter) {
    wait_until("room in the buffer", || writer.handle.shared.lock().lines.len() < MAX_BUFFERED_BYTES);
}

/// Waits up to 10 s for `condition`.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}
